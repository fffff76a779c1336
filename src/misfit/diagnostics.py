"""Diagnostics that test the seeds' guesses about why a configuration fails.

For each failing configuration the report puts the per-epoch diagnostics logged by
training (output sums, saturation, entropy, gradient norms, prediction spread) next to
the recommended cell's, in a table at epoch 1 and at the best epoch, a figure, and
statements that fire only when the numbers support them.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from misfit.files import json_float


@dataclass(frozen=True)
class Section:
    title: str
    guess: str  # the seed's explanation, paraphrased
    cells: tuple[str, ...]
    reference: str
    keys: tuple[tuple[str, str], ...]  # (history key, label)


CLASSIFIER_KEYS = (
    ("diag_prob_sum", "mean sum of outputs"),
    ("diag_saturated_share", "share of outputs < 0.01 or > 0.99"),
    ("diag_entropy", "output entropy (nats)"),
    ("grad_norm_fc_final", "‖grad‖ at fc_final"),
    ("grad_norm_conv1", "‖grad‖ at conv1"),
)
REGRESSION_KEYS = (
    ("diag_pred_std", "std of predictions (strokes)"),
    ("diag_target_std", "std of targets (strokes)"),
    ("grad_norm_fc_final", "‖grad‖ at fc_final"),
    ("grad_norm_conv1", "‖grad‖ at conv1"),
)

SECTIONS = (
    Section("Multiclass with a sigmoid output (bce, mse)",
            "sigmoid outputs are independent, so they do not model the competition between classes "
            "that softmax builds in (seed 001, 1-2; seed 000, 3-2)",
            ("multiclass-sigmoid-mse", "multiclass-sigmoid-bce", "multiclass-sigmoid-ce"),
            "multiclass-softmax-ce", CLASSIFIER_KEYS),
    Section("Probability with a softmax output",
            "softmax over a single output is the constant 1, so the model cannot express a probability",
            ("probability-softmax-ce", "probability-softmax-bce"), "probability-sigmoid-bce", CLASSIFIER_KEYS),
    Section("Multilabel with a softmax output",
            "softmax forces the four outputs to sum to 1, but a digit can belong to several groups",
            ("multilabel-softmax-mse", "multilabel-softmax-ce", "multilabel-softmax-bce"),
            "multilabel-sigmoid-bce", CLASSIFIER_KEYS),
    Section("Regression without target normalisation",
            "raw targets (1 to 6 strokes) and a sigmoid transform of them distort the regression "
            "(seed 001, 1-1)",
            ("regression-none-mse-raw", "regression-relu-mse-raw", "regression-sigmoid-mse-raw",
             "regression-sigmoid-mse-zscore", "regression-relu-mse-zscore"),
            "regression-none-mse-zscore", REGRESSION_KEYS),
    Section("Regression with a binary cross-entropy loss",
            "BCE expects probabilities in [0, 1]; a z-scored target is neither",
            ("regression-none-bce-zscore", "regression-none-bcelogits-zscore"),
            "regression-none-mse-zscore", REGRESSION_KEYS),
)


def value_at(histories: list[list[dict]], key: str, epoch_of) -> float | None:
    """Mean over seeds of `key` at the epoch `epoch_of(seed_index)` picks (None: no value)."""
    values = []
    for index, history in enumerate(histories):
        epoch = epoch_of(index)
        record = next((r for r in history if r["epoch"] == epoch), None)
        value = None if record is None else json_float(record.get(key))
        if value is not None and math.isfinite(value):
            values.append(value)
    return statistics.fmean(values) if values else None


def snapshot(histories: list[list[dict]], keys) -> dict[str, dict]:
    """{key: {"epoch1": mean, "last": mean}} over seeds; "last" is where each seed stopped.

    The last epoch rather than the best: a collapsed cell's best epoch is often its
    first, while what went wrong shows in the state its training ended in.
    """
    return {
        key: {"epoch1": value_at(histories, key, lambda i: 1),
              "last": value_at(histories, key, lambda i: histories[i][-1]["epoch"] if histories[i] else None)}
        for key, _ in keys
    }


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
        return f"{value:.2e}"
    return f"{value:.3f}"


def table(section: Section, snapshots: dict[str, dict]) -> list[str]:
    header = "| cell | " + " | ".join(f"{label} (epoch 1 → last)" for _, label in section.keys) + " |"
    rows = [header, "|---|" + "---|" * len(section.keys)]
    for cell, snap in snapshots.items():
        marker = " (recommended)" if cell == section.reference else ""
        cells = [f"{_fmt(snap[key]['epoch1'])} → {_fmt(snap[key]['last'])}" for key, _ in section.keys]
        rows.append(f"| `{cell}`{marker} | " + " | ".join(cells) + " |")
    return rows


def statements(section: Section, snapshots: dict[str, dict], targets_per_image: float | None) -> list[str]:
    """What the numbers show, one statement per finding that the numbers support."""
    reference = snapshots.get(section.reference)
    found = []
    for cell, snap in snapshots.items():
        if cell == section.reference:
            continue
        found += _classifier_statements(cell, snap, reference, targets_per_image)
        found += _regression_statements(cell, snap, reference)
    return found


def _last(snap: dict, key: str) -> float | None:
    return snap.get(key, {}).get("last")


def _classifier_statements(cell, snap, reference, targets_per_image) -> list[str]:
    out = []
    saturated = _last(snap, "diag_saturated_share")
    if saturated is not None and saturated >= 0.9:
        out.append(f"`{cell}`: {saturated:.0%} of its outputs are saturated (< 0.01 or > 0.99) when it stops.")
    total = _last(snap, "diag_prob_sum")
    if total is not None and targets_per_image is not None and abs(total - targets_per_image) > 0.5:
        out.append(f"`{cell}`: its outputs sum to {total:.2f} per image while the targets have "
                   f"{targets_per_image:.2f} positives per image.")
    if reference:
        for key, where in (("grad_norm_conv1", "conv1"), ("grad_norm_fc_final", "fc_final")):
            ours, theirs = _last(snap, key), _last(reference, key)
            if ours is not None and theirs and ours < 0.1 * theirs:
                size = f"{theirs / ours:.3g}× smaller than" if ours else "no gradient at all, against"
                out.append(f"`{cell}`: the gradient reaching {where} when it stops is {_fmt(ours)}, "
                           f"{size} the recommended cell's ({_fmt(theirs)}).")
    return out


def _regression_statements(cell, snap, reference) -> list[str]:
    spread, target = _last(snap, "diag_pred_std"), _last(snap, "diag_target_std")
    if spread is None or not target:
        return []
    ratio = spread / target
    if ratio < 0.5 or ratio > 1.5:
        return [f"`{cell}`: when it stops its predictions spread {spread:.2f} strokes (std) against the "
                f"targets' {target:.2f}, {ratio:.2f}× the targets' spread."]
    return []

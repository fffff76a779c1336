"""Diagnostics that show how the failing runs fail.

Sections follow what actually happened, not what was expected to: one per failure mode
(constant answer, dead ReLU, worse than constant), split into classifiers and
regressors. Each row is one cell's runs *in that mode* (never an average across modes),
next to the recommended cell's learned runs, with the per-epoch diagnostics training
logged at epoch 1 and at the last epoch each run trained, and statements that appear
only when the numbers support them.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from misfit.core.files import json_float


@dataclass(frozen=True)
class Section:
    title: str
    mode: str
    keys: tuple[tuple[str, str], ...]  # (history key, label)


CLASSIFIER_KEYS = (
    ("diag_prob_sum", "mean sum of outputs"),
    ("diag_saturated_share", "share of outputs < 0.01 or > 0.99"),
    ("diag_entropy", "output entropy (nats)"),
    ("diag_top_share", "share of the most frequent answer"),
    ("grad_norm_fc_final", "‖grad‖ at fc_final"),
    ("grad_norm_conv1", "‖grad‖ at conv1"),
)
REGRESSION_KEYS = (
    ("diag_pred_std", "std of predictions (strokes)"),
    ("diag_target_std", "std of targets (strokes)"),
    ("diag_live_share", "share of live ReLU outputs"),
    ("grad_norm_fc_final", "‖grad‖ at fc_final"),
    ("grad_norm_conv1", "‖grad‖ at conv1"),
)

# the seeds' own explanations of why a configuration fails, to set beside what the runs show
SEED_GUESSES = {
    "multiclass-sigmoid": "sigmoid outputs are independent, so they do not model the competition "
                          "between classes that softmax builds in (seed 001, 1-2; seed 000, 3-2)",
    "probability-softmax": "softmax over a single output is the constant 1",
    "multilabel-softmax": "softmax forces the four outputs to sum to 1, but a digit can belong to several groups",
    "regression-relu": "a ReLU output cannot go below 0 (seed 001, 1-1)",
    "regression-sigmoid": "a sigmoid transform of the target distorts the regression (seed 001, 1-1)",
    "regression-none-bce": "BCE expects probabilities in [0, 1]; a z-scored target is neither",
}


def seed_guess(cell_id: str) -> str | None:
    return next((text for prefix, text in SEED_GUESSES.items() if cell_id.startswith(prefix)), None)


def sections_for(mode: str, title: str) -> tuple[Section, Section]:
    return (Section(f"{title}: classifiers", mode, CLASSIFIER_KEYS),
            Section(f"{title}: regressors", mode, REGRESSION_KEYS))


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
    """snapshots: {row label: snapshot}; the label names the cell and which of its runs."""
    header = "| runs | " + " | ".join(f"{label} (epoch 1 → last)" for _, label in section.keys) + " |"
    rows = [header, "|---|" + "---|" * len(section.keys)]
    for label, snap in snapshots.items():
        cells = [f"{_fmt(snap[key]['epoch1'])} → {_fmt(snap[key]['last'])}" for key, _ in section.keys]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows


def statements(cell: str, snap: dict, reference: dict | None, targets_per_image: float | None) -> list[str]:
    """What the numbers show for one cell's runs in a mode, one statement per finding."""
    return (_classifier_statements(cell, snap, reference, targets_per_image)
            + _regression_statements(cell, snap, reference))


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
                ratio = theirs / ours if ours else None
                size = ("no gradient at all, against" if ratio is None else
                        "over 1,000× smaller than" if ratio > 1000 else f"{ratio:.0f}× smaller than")
                out.append(f"`{cell}`: the gradient reaching {where} when it stops is {_fmt(ours)}, "
                           f"{size} the recommended cell's ({_fmt(theirs)}).")
    return out


def _regression_statements(cell, snap, reference) -> list[str]:
    spread, target = _last(snap, "diag_pred_std"), _last(snap, "diag_target_std")
    if spread is None or not target:
        return []
    ratio = spread / target
    if ratio < 0.5 or ratio > 1.5:
        return [f"`{cell}`: when it stops its predictions spread {_fmt(spread)} strokes (std) against the "
                f"targets' {_fmt(target)}, {_fmt(ratio)}× the targets' spread."]
    return []

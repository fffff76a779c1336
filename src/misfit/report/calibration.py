"""Whether a cell's outputs are probabilities that mean what they say, from the evaluate
stage's figures (misfit.evaluate.calibration: Brier, log-loss, ECE, outputs outside [0, 1],
reliability bins), over its learned runs on every draw."""
from __future__ import annotations

import statistics

from misfit.report.cells import Cell
from misfit.report.modes import LEARNED

FIGURES = ("ece", "brier", "log_loss", "outside_unit_share")


def _calibrations(cell: Cell) -> list[dict]:
    found = []
    for run in cell.runs + cell.draw_runs:
        if run.outcome.mode == LEARNED and run.evaluated is not None and run.evaluated.calibration is not None:
            found.append(run.evaluated.calibration.model_dump())
    return found


def calibration_summary(cell: Cell) -> dict | None:
    """Per figure: median, min, max over the learned runs; the reliability bins pooled.
    None where the task's outputs are no probabilities (regression) or no run learned."""
    runs = _calibrations(cell)
    if not runs:
        return None
    summary: dict = {"runs": len(runs)}
    for figure in FIGURES:
        values = [r[figure] for r in runs]
        if any(v is None for v in values):
            summary[figure] = None  # undefined for some run (log-loss of an output outside [0, 1])
            continue
        summary[figure] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    summary["reliability"] = pooled_reliability([r["reliability"] for r in runs])
    return summary


def pooled_reliability(per_run: list[list]) -> list[dict]:
    """Each confidence bin over all runs: images in it, their mean confidence, the share that came true."""
    pooled = []
    for bins in zip(*per_run):
        count = sum(b[0] for b in bins)
        if count == 0:
            pooled.append({"count": 0, "confidence": None, "observed": None})
            continue
        pooled.append({"count": count,
                       "confidence": sum(b[0] * b[1] for b in bins if b[0]) / count,
                       "observed": sum(b[0] * b[2] for b in bins if b[0]) / count})
    return pooled

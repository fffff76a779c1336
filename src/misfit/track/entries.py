"""A run's MLflow entries, from its record: what train@<cell> and evaluate@<cell> log live,
and what `misfit restore-runs` logs again from the records, by the same functions."""
from __future__ import annotations

import math
import statistics

from misfit.core.record import Epoch, EvaluatedRun, TrainedRun


def _numbers(values: dict) -> dict[str, float]:
    """The numeric values (not booleans, not None) as floats."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def epoch_values(epoch: Epoch, metric: str) -> dict[str, float]:
    """One epoch's metrics at step `epoch`: every number it holds, valid_metric named valid_<metric>."""
    values = {**epoch.model_dump(), **epoch.diagnostics}
    values[f"valid_{metric}"] = values.pop("valid_metric")
    return _numbers(values)


def trained_finals(run: TrainedRun, metric: str) -> dict[str, float]:
    return _numbers({f"best_valid_{metric}": run.valid_best, "best_epoch": run.best_epoch,
                     "epochs_run": run.epochs_run})


def trained_tags(run: TrainedRun) -> dict[str, str]:
    return {"status": run.status, "error": run.error or "-", "checkpoint_sha256": run.checkpoint_sha256 or "-"}


def run_status(run: TrainedRun) -> str:
    return "FINISHED" if run.status == "ok" else "FAILED"


def parent_summary(runs: list[TrainedRun], metric: str) -> dict[str, float]:
    values = [r.valid_best for r in runs if r.status == "ok" and r.valid_best is not None
              and math.isfinite(r.valid_best)]
    summary = {"n_runs": float(len(runs)), "n_failed": float(sum(r.status != "ok" for r in runs))}
    if values:
        summary[f"best_valid_{metric}_median"] = statistics.median(values)
    return summary


def parent_tags(runs: list[TrainedRun]) -> dict[str, str]:
    failed = [f"draw {r.subset_seed} seed {r.seed}: {r.error}" for r in runs if r.status != "ok"]
    return {"status": "ok" if not failed else "failed", "error": "; ".join(failed) or "-"}


def parent_status(runs: list[TrainedRun]) -> str:
    return "FINISHED" if all(r.status == "ok" for r in runs) else "FAILED"


def evaluation_numbers(run: EvaluatedRun, metric: str) -> dict[str, float]:
    numbers = {f"test_{metric}": run.test, f"evaluated_valid_{metric}": run.valid}
    if run.calibration is not None:
        c = run.calibration
        numbers.update({"test_brier": c.brier, "test_ece": c.ece, "test_outside_unit_share": c.outside_unit_share,
                        "test_log_loss": c.log_loss})
    return _numbers(numbers)


def evaluation_tags(run: EvaluatedRun, profile: str) -> dict[str, str]:
    return {"checkpoint_sha256_verified": run.checkpoint_sha256, "matches_record": str(run.matches_record).lower(),
            "evaluated_under_profile": profile}

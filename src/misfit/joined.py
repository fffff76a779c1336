"""Reading a cell's two records together (load_cell_records: the report, restore-runs), and
the view the audit still reads: the train record as a dict whose runs each carry their evaluation.

Kept apart from the models (misfit.core.record) so that the stages' code does not hold it:
the readers index this view by key until they read the models themselves (issue 23).
"""
from __future__ import annotations

from pathlib import Path

from misfit.core.errors import DataError
from misfit.core.record import EvaluationRecord, TrainRecord, load_evaluation, load_train_record


def joined_view(record: TrainRecord, evaluation: EvaluationRecord | None) -> dict:
    """The train record as a dict whose runs each carry their evaluation: `test` (None for a
    run that failed or was not evaluated) and `evaluated` ({valid_best, test, matches_record}).

    The shape the report, audit and restore-runs read before evaluate was a stage of its
    own; they still index it by key (issue 23 left moving them onto the models above)."""
    view = record.model_dump(mode="python")
    for run, raw in zip(record.runs, view["runs"]):
        scored = evaluation.run(run.subset_seed, run.seed) if evaluation else None
        raw["test"] = scored.test if scored is not None and run.status == "ok" else None
        raw["evaluated"] = ({"valid_best": scored.valid, "test": scored.test, "matches_record": scored.matches_record,
                             "calibration": scored.calibration.model_dump() if scored.calibration else None}
                            if scored is not None else {"valid_best": None, "test": None, "matches_record": None})
        raw["initial"] = run.initial.model_dump()
        raw["history"] = [epoch.model_dump() for epoch in run.history]
    return view


def load_cell_records(records_dir: Path, evaluations_dir: Path, cell_id: str) -> tuple[TrainRecord, EvaluationRecord | None]:
    """records/<cell>.json and evaluations/<cell>.json (None: no run evaluated yet), each
    validated against its model, and checked to be of the same cell."""
    record = load_train_record(records_dir / f"{cell_id}.json")
    evaluation_path = evaluations_dir / f"{cell_id}.json"
    evaluation = load_evaluation(evaluation_path) if evaluation_path.exists() else None
    if evaluation is not None and evaluation.cell_id != record.cell_id:
        raise DataError(f"{evaluation_path}: field cell_id: {evaluation.cell_id!r}, expected {record.cell_id!r}")
    return record, evaluation


def load_joined(records_dir: Path, evaluations_dir: Path, cell_id: str) -> dict:
    """records/<cell>.json joined with evaluations/<cell>.json (absent: no run evaluated yet)."""
    return joined_view(*load_cell_records(records_dir, evaluations_dir, cell_id))

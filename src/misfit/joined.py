"""Reading a cell's two records together: the report, restore-runs, `misfit audit` and
`misfit reproduce` load them here, then read the models (misfit.core.record) themselves.

Kept apart from the models so that the stages' code does not hold it.
"""
from __future__ import annotations

from pathlib import Path

from misfit.core.errors import DataError
from misfit.core.record import EvaluationRecord, TrainRecord, load_evaluation, load_train_record


def load_cell_records(records_dir: Path, evaluations_dir: Path, cell_id: str) -> tuple[TrainRecord, EvaluationRecord | None]:
    """records/<cell>.json and evaluations/<cell>.json (None: no run evaluated yet), each
    validated against its model, and checked to be of the same cell."""
    record = load_train_record(records_dir / f"{cell_id}.json")
    evaluation_path = evaluations_dir / f"{cell_id}.json"
    evaluation = load_evaluation(evaluation_path) if evaluation_path.exists() else None
    if evaluation is not None and evaluation.cell_id != record.cell_id:
        raise DataError(f"{evaluation_path}: field cell_id: {evaluation.cell_id!r}, expected {record.cell_id!r}")
    return record, evaluation

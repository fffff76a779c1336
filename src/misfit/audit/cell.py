"""What an audit reads of a cell: its record's values and each run's, typed.

Two sources fill it: records/<cell>.json with evaluations/<cell>.json (the models of
misfit.core.record, as misfit.joined.load_cell_records reads them: audited_cell), or, for a
cell whose record git lacks, its runs in the MLflow store (misfit.audit.store.record_from_run).
MLflow holds less than the records (no checkpoint, no epoch history, no re-scoring), so the
audit reads this common part rather than the models themselves; the fields keep their names.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from misfit.core.record import EvaluatedRun, EvaluationRecord, TrainedRun, TrainRecord


@dataclass(frozen=True)
class AuditedRun:
    """One (draw, seed) run of the cell."""
    seed: int
    subset_seed: int | None  # the data draw; None where MLflow holds none
    run_id: str
    config_digest: str | None
    status: str
    error: str | None
    best_epoch: int | None
    valid_best: float | None
    epochs_run: int | None
    test: float | None  # None for a failed run, or one not re-scored
    checkpoint: str | None = None  # its file under models/<cell>/; the store names none
    checkpoint_sha256: str | None = None
    evaluated: EvaluatedRun | None = None  # evaluate@'s re-scoring; the store's runs carry none


@dataclass(frozen=True)
class AuditedCell:
    """The cell's record: its configuration, identities and runs, in the order they trained."""
    cell: dict
    protocol: dict
    data: dict  # the main draw's identity, and under "config" the data params
    seeds: list[int]
    experiment: str | None
    parent_run_id: str
    cell_digest: str | None  # None: a store run without the tag
    metric: str
    tags: dict[str, str]
    runs: list[AuditedRun]
    draws: dict[str, dict] = field(default_factory=dict)  # further draws' identities; the store's: none

    @property
    def main_draw(self) -> int | None:
        """The main data draw (data.subset_seed); None where the record holds no data params."""
        return (self.data.get("config") or {}).get("subset_seed")


def audited_run(trained: TrainedRun, evaluated: EvaluatedRun | None) -> AuditedRun:
    """A run of records/<cell>.json with its entry in evaluations/<cell>.json (None: none)."""
    # a failed run has no test number even where its checkpoint was re-scored: metrics/<cell>.json
    # (misfit.evaluate.score.cell_metrics) counts only the runs that finished
    test = evaluated.test if evaluated is not None and trained.status == "ok" else None
    return AuditedRun(
        seed=trained.seed, subset_seed=trained.subset_seed, run_id=trained.run_id,
        config_digest=trained.config_digest, status=trained.status, error=trained.error,
        best_epoch=trained.best_epoch, valid_best=trained.valid_best, epochs_run=trained.epochs_run,
        test=test, checkpoint=trained.checkpoint, checkpoint_sha256=trained.checkpoint_sha256, evaluated=evaluated)


def audited_cell(record: TrainRecord, evaluation: EvaluationRecord | None) -> AuditedCell:
    """The cell as records/<cell>.json and evaluations/<cell>.json (None: not evaluated yet) hold it."""
    runs = [audited_run(run, evaluation.run(run.subset_seed, run.seed) if evaluation else None)
            for run in record.runs]
    return AuditedCell(
        cell=record.cell, protocol=record.protocol, data=record.data, seeds=record.seeds,
        experiment=record.experiment, parent_run_id=record.parent_run_id, cell_digest=record.cell_digest,
        metric=record.metric, tags=record.tags, runs=runs, draws=record.draws)

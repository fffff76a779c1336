"""The run records: the contract between train, evaluate, the report, the audit and restore-runs.

`records/<cell>.json` (the train stage's) says how each run of a cell trained: every
epoch, its best checkpoint and that file's SHA-256, the MLflow run it logged to.
`evaluations/<cell>.json` (the evaluate stage's) says what each kept checkpoint scores,
re-scored with the reference model, on valid and test, and how well calibrated its
probabilities are. Both are read through these models only: a file whose shape drifts
from them fails at load time, naming the file and the field.

Floats that are not finite are written as the strings "nan", "inf", "-inf" (JSON has no
such numbers) and read back as floats.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from misfit.core.errors import DataError
from misfit.core.files import read_json, write_json_atomic

RECORD_VERSION = 2
NONFINITE = ("nan", "inf", "-inf")


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Epoch(BaseModel):
    """One validation pass of one run: epoch 0 is before any update.

    The valid diagnostics (`diag_*`, task-dependent: misfit.train.targets) are the only
    fields beyond these; each is a number.
    """
    model_config = ConfigDict(extra="allow", frozen=True)

    epoch: int
    valid_loss: float
    valid_metric: float
    train_loss: float | None = None
    grad_norm_fc_final: float | None = None
    grad_norm_conv1: float | None = None
    seconds: float | None = None
    improved: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _diagnostics_as_floats(cls, values):
        """A diagnostic that is not finite is written as "nan", "inf" or "-inf" (misfit.core.files)."""
        if isinstance(values, dict):
            values = {k: float(v) if k.startswith("diag_") and v in NONFINITE else v for k, v in values.items()}
        return values

    @model_validator(mode="after")
    def _only_numeric_diagnostics(self) -> Epoch:
        for key, value in (self.model_extra or {}).items():
            if not key.startswith("diag_") or not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"unexpected field {key!r} = {value!r} (beyond the fixed ones, an epoch "
                                 "holds only numeric diag_* diagnostics)")
        return self

    @property
    def diagnostics(self) -> dict[str, float]:
        return dict(self.model_extra or {})


class TrainedRun(_Record):
    """One (draw, seed) run as the train stage left it."""
    seed: int
    subset_seed: int
    run_id: str
    config_digest: str
    status: Literal["ok", "failed"]
    error: str | None
    best_epoch: int | None
    valid_best: float | None
    epochs_run: int
    checkpoint: str | None  # file name under models/<cell>/; None: no epoch ever improved
    checkpoint_sha256: str | None
    initial: Epoch
    history: list[Epoch]


class TrainRecord(_Record):
    """records/<cell>.json."""
    version: Literal[2]
    cell_id: str
    cell: dict
    task: str
    metric: str
    protocol: dict
    data: dict  # the main draw's identity: dataset digest and each training split's SHA-256
    draws: dict[str, dict]  # further draws' identities, by data.subset_seed
    seeds: list[int]
    experiment: str
    parent_run_id: str
    cell_digest: str
    tags: dict[str, str]
    started_ms: int
    seconds: float
    phases: dict[str, float]
    runs: list[TrainedRun]

    def run(self, subset_seed: int, seed: int) -> TrainedRun:
        return next(r for r in self.runs if (r.subset_seed, r.seed) == (subset_seed, seed))


class Calibration(_Record):
    """How far a run's test outputs are from being probabilities that mean what they say.

    Over every output of every test image (a multilabel image counts 4 times, a softmax
    binary or multiclass image once, with its top class's probability as confidence).
    `log_loss` is None where an output lies outside [0, 1], where it is undefined.
    """
    brier: float
    log_loss: float | None
    ece: float  # expected calibration error (torchmetrics, l1) over `bins` equal-width confidence bins
    outside_unit_share: float  # share of outputs outside [0, 1]
    bins: int
    # per bin, then one for a confidence of exactly 1: (count, mean confidence, share that came true)
    reliability: list[tuple[int, float | None, float | None]]


class EvaluatedRun(_Record):
    """One kept checkpoint, re-scored with the reference model."""
    seed: int
    subset_seed: int
    run_id: str
    checkpoint: str
    checkpoint_sha256: str
    valid: float
    matches_record: bool  # `valid` equals the valid_best training recorded
    test: float
    calibration: Calibration | None  # None: the task's outputs are no probabilities (regression)


class EvaluationRecord(_Record):
    """evaluations/<cell>.json."""
    version: Literal[2]
    cell_id: str
    metric: str
    test_data: dict  # the test split's identity: its SHA-256, size and source
    record_sha256: str  # of records/<cell>.json as it was evaluated
    predictions: str  # the file holding every run's per-image test outputs
    started_ms: int
    seconds: float
    runs: list[EvaluatedRun]

    def run(self, subset_seed: int, seed: int) -> EvaluatedRun | None:
        return next((r for r in self.runs if (r.subset_seed, r.seed) == (subset_seed, seed)), None)


def _describe(path: Path, error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(the whole file)"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{path}: field {field}: {first['msg']}{more}"


def _load(path: Path, model: type[BaseModel]):
    try:
        raw = read_json(path)
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not readable JSON ({error})") from None
    if isinstance(raw, dict) and raw.get("version") != RECORD_VERSION:
        raise DataError(f"{path}: field version: {raw.get('version')!r}, expected {RECORD_VERSION} "
                        "(written by other code; rerun its stage)")
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise DataError(_describe(path, error)) from None


def load_train_record(path: Path) -> TrainRecord:
    return _load(path, TrainRecord)


def load_evaluation(path: Path) -> EvaluationRecord:
    return _load(path, EvaluationRecord)


def write_record(path: Path, record: TrainRecord | EvaluationRecord) -> None:
    write_json_atomic(path, record.model_dump(mode="python"))

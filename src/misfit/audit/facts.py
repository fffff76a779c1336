"""What an audit found, as plain data: the one model both renderers (text, JSON) read.

The builder (misfit.audit.build) fills it from the records in git, dvc.lock, params.yaml,
the metrics and report files, the working tree and, when there is one, the MLflow store.
Nothing here reads a file or formats a line.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from misfit.core.files import json_safe

ABSENT = "<absent>"  # a field one side has and the other lacks
CHECKPOINT_KIND = "checkpoint"  # the disagreement: a checkpoint present but not the file training saved
EXIT_CHECKPOINT_DIFFERS = 3  # 1 is an audit that could not run (no such cell or run)


@dataclass
class Match:
    by: str  # "cell id", "run id", "config digest", "cell digest"
    value: str


@dataclass
class SeedRun:
    """One training run of the cell, as its record in git holds it."""
    seed: int
    subset_seed: int | None  # the data draw; None in records that predate draws
    status: str
    error: str | None
    valid_best: float | None
    test: float | None
    best_epoch: int | None
    epochs_run: int | None
    run_id: str
    config_digest: str | None
    checkpoint: str | None  # its file under models/<cell>/ (a DVC output, not in git)
    rescored: dict | None  # the reference model's re-scoring: valid_best, test, matches_record
    checkpoint_sha256: str | None = None  # as the record holds it
    # the file here against that hash: "verified", "differs", "absent", "no hash recorded"; None: no checkpoint
    checkpoint_check: str | None = None


@dataclass
class Missing:
    """Something the number rests on that this checkout does not hold, and how to get it."""
    what: str
    why: str
    get: list[str]  # commands, in order


@dataclass
class Disagreement:
    kind: str
    message: str
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"kind": self.kind, "message": self.message, **self.details}


@dataclass
class Facts:
    query: str
    matched: Match
    cell: str
    seed: int | None
    draw: int | None  # with seed: the data draw (data.subset_seed) of the one run audited
    source: str  # where the record came from: records/<cell>.json, or an MLflow run
    traced_from_git: bool  # every value below comes from files committed in git
    configuration: dict
    digests: dict
    data_identity: dict
    code: dict
    metrics: dict
    mlflow: dict
    reproduce: dict
    missing: list[Missing] = field(default_factory=list)
    disagreements: list[Disagreement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        """What `misfit audit` exits with: EXIT_CHECKPOINT_DIFFERS when a checkpoint here is not the
        file its record hashed (the number no longer rests on it), else 0. Other disagreements are
        shown but leave it 0: a later commit or an edited params.yaml is no fault of the number."""
        return EXIT_CHECKPOINT_DIFFERS if any(d.kind == CHECKPOINT_KIND for d in self.disagreements) else 0

    def to_json(self) -> dict:
        data = asdict(self)
        data["disagreements"] = [d.to_json() for d in self.disagreements]
        return json_safe(data)

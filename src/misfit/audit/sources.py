"""What the checkout holds: the files an audit reads, each read once, read-only.

Git carries records/<cell>.json (every run of a cell: configuration, digests, data
identity, code md5s, per-epoch history, run ids), metrics/<cell>.json (the numbers),
reports/results.json, dvc.lock and params.yaml. DVC's cache and the MLflow store may be
absent (a fresh clone): whatever needs them says so instead of failing.
"""
from __future__ import annotations

import re
import subprocess
from functools import cached_property
from pathlib import Path

import yaml

from misfit.core.errors import DataError
from misfit.core.files import read_json
from misfit.core.layout import (
    EVALUATIONS_DIR,
    METRICS_DIR,
    MODELS_DIR,
    PARAMS_FILE,
    RECORDS_DIR,
    REPORTS_DIR,
    SPLIT_DIR,
)
from misfit.core.record import EvaluationRecord, TrainRecord
from misfit.joined import load_cell_records

RESULTS_FILE = REPORTS_DIR / "results.json"
LOCK_FILE = Path("dvc.lock")
_RUN_ID = re.compile(r"[0-9a-f]{32}")


class RecordError(RuntimeError):
    """A records/<cell>.json that cannot be used; the message names the file and the field."""


def record_path(cell: str) -> Path:
    return RECORDS_DIR / f"{cell}.json"


def read_json_or_none(path: Path):
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def read_yaml_or_none(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def git(root: Path, *args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None


def git_out(root: Path, *args: str) -> str | None:
    done = git(root, *args)
    return done.stdout.strip() if done is not None and done.returncode == 0 else None


CellRecords = tuple[TrainRecord, EvaluationRecord | None]  # as misfit.joined.load_cell_records reads them


class Project:
    """The checkout at `root`; every file is read on first use.

    A record is read only when an audit needs its cell: a broken records/<cell>.json stops
    the audits of that cell (and searches that come up empty), not those of every other.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self._records: dict[str, CellRecords | None] = {}

    def record_cells(self) -> list[str]:
        """The cells that have a records/<cell>.json (nothing read)."""
        return sorted(path.stem for path in (self.root / RECORDS_DIR).glob("*.json"))

    def cell_records(self, cell: str) -> CellRecords | None:
        """records/<cell>.json and its evaluations, each validated against its model; None when
        the record is absent. RecordError, naming the file and the field, when one cannot be used."""
        if cell not in self._records:
            self._records[cell] = self._load_records(cell)
        return self._records[cell]

    def _load_records(self, cell: str) -> CellRecords | None:
        if not (self.root / record_path(cell)).exists():
            return None
        try:
            return load_cell_records(self.root / RECORDS_DIR, self.root / EVALUATIONS_DIR, cell)
        except DataError as error:
            raise RecordError(str(error).replace(str(self.root) + "/", "")) from None

    def readable_records(self) -> tuple[dict[str, CellRecords], list[str]]:
        """(every cell's records that can be used, the error of each that cannot): a search by
        run id or digest looks through all the records it can read."""
        found, broken = {}, []
        for cell in self.record_cells():
            try:
                found[cell] = self.cell_records(cell)
            except RecordError as error:
                broken.append(str(error))
        return found, broken

    @cached_property
    def params_raw(self) -> dict:
        raw = read_yaml_or_none(self.root / PARAMS_FILE)
        return raw if isinstance(raw, dict) else {}

    @cached_property
    def cell_ids(self) -> set[str]:
        cells = self.params_raw.get("cells")
        return set(cells) if isinstance(cells, dict) else set()

    @cached_property
    def lock(self) -> dict:
        lock = read_yaml_or_none(self.root / LOCK_FILE)
        return lock if isinstance(lock, dict) else {}

    def lock_stage(self, stage: str) -> dict | None:
        return (self.lock.get("stages") or {}).get(stage)

    def metrics(self, cell: str) -> dict | None:
        return read_json_or_none(self.root / METRICS_DIR / f"{cell}.json")

    @cached_property
    def results(self) -> dict | None:
        return read_json_or_none(self.root / RESULTS_FILE)

    def results_entry(self, cell: str) -> dict | None:
        return ((self.results or {}).get("cells") or {}).get(cell)

    @cached_property
    def split_manifest(self) -> dict | None:
        return read_json_or_none(self.root / SPLIT_DIR / "manifest.json")

    def checkpoint(self, cell: str, name: str) -> Path:
        return self.root / MODELS_DIR / cell / name

    @cached_property
    def head(self) -> str | None:
        return git_out(self.root, "rev-parse", "HEAD")

    def committed_unchanged(self, path: Path) -> bool:
        """`path` is tracked by git and the working copy equals HEAD's."""
        tracked = git(self.root, "ls-files", "--error-unmatch", "--", str(path))
        if tracked is None or tracked.returncode != 0:
            return False
        diff = git(self.root, "diff", "--quiet", "HEAD", "--", str(path))
        return diff is not None and diff.returncode == 0

    def has_commit(self, commit: str) -> bool:
        done = git(self.root, "cat-file", "-e", f"{commit}^{{commit}}")
        return done is not None and done.returncode == 0


def run_ids_in(value) -> set[str]:
    """Every MLflow run id (32 hex characters) anywhere in a JSON value.

    reports/results.json names a cell's runs in more than one place (the parent, the
    seeds); collecting them all keeps the check independent of that file's layout.
    """
    if isinstance(value, str):
        return {value} if _RUN_ID.fullmatch(value) else set()
    if isinstance(value, dict):
        return set().union(*(run_ids_in(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(run_ids_in(v) for v in value)) if value else set()
    return set()

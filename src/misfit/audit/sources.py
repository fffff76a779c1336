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
from misfit.joined import load_joined

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


REQUIRED_RECORD_FIELDS = ("cell", "task", "metric", "protocol", "data", "seeds", "parent_run_id",
                          "cell_digest", "tags", "runs")


def check_record(path: Path, record) -> dict:
    """The record, or RecordError naming the file and the first missing field."""
    if not isinstance(record, dict):
        raise RecordError(f"{path}: expected a JSON object, got {type(record).__name__}")
    for name in REQUIRED_RECORD_FIELDS:
        if name not in record:
            raise RecordError(f"{path}: no field {name!r} (written by the train stage: "
                              f"dvc repro train@{path.stem})")
    for index, run in enumerate(record["runs"]):
        for name in ("seed", "run_id", "status"):
            if name not in run:
                raise RecordError(f"{path}: runs[{index}] has no field {name!r}")
    return record


class Project:
    """The checkout at `root`; every file is read on first use.

    A record is read only when an audit needs its cell: a broken records/<cell>.json stops
    the audits of that cell (and searches that come up empty), not those of every other.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self._records: dict[str, dict | None] = {}

    def record_cells(self) -> list[str]:
        """The cells that have a records/<cell>.json (nothing read)."""
        return sorted(path.stem for path in (self.root / RECORDS_DIR).glob("*.json"))

    def record(self, cell: str) -> dict | None:
        """records/<cell>.json joined with its evaluations, checked; None when it is absent.
        RecordError, naming the file and the field, when it cannot be used."""
        if cell not in self._records:
            self._records[cell] = self._load_record(cell)
        return self._records[cell]

    def _load_record(self, cell: str) -> dict | None:
        path = self.root / record_path(cell)
        if not path.exists():
            return None
        try:
            record = load_joined(self.root / RECORDS_DIR, self.root / EVALUATIONS_DIR, cell)
        except DataError as error:
            raise RecordError(str(error).replace(str(self.root) + "/", "")) from None
        return check_record(record_path(cell), record)

    @cached_property
    def records(self) -> dict[str, dict]:
        """Every record; the first broken one raises (restore-runs needs them all)."""
        return {cell: self.record(cell) for cell in self.record_cells()}

    def readable_records(self) -> tuple[dict[str, dict], list[str]]:
        """(every record that can be used, the error of each that cannot): a search by run id
        or digest looks through all the records it can read."""
        found, broken = {}, []
        for cell in self.record_cells():
            try:
                found[cell] = self.record(cell)
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
